//! The contract between the controller and the network drivers.
//!
//! A driver turns "create network / create endpoint / join / leave / delete" into kernel calls
//! through [`crate::sys`]. Everything it needs is handed in: the network and endpoint as plain
//! values (already validated, addresses already reserved by IPAM), and the kernel handles of the
//! host and of the sandbox. A driver keeps no state of its own that the controller could not
//! rebuild from those values, and never talks to the store, IPAM or DNS.
//!
//! The implementations live in their own modules ([`bridge`], [`host`], [`null`], [`macvlan`],
//! [`overlay`]); the registry that picks one for a network lives above them, in the controller.
//!
//! Cluster-scoped drivers (overlay) also receive their remote peers as values
//! ([`Driver::peer_add`], [`Driver::peer_remove`]): the controller learns them from the cluster
//! store, the driver only turns them into kernel entries.

pub mod bridge;
pub mod host;
pub mod macvlan;
pub mod null;
mod options;
pub mod overlay;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use async_trait::async_trait;
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};

use crate::sys::rtnl::{Handle, MacAddr};
use crate::sys::{NetNs, SysError};

pub use options::{
    BridgeOptions, DriverKind, DriverOptions, FIRST_VNI, HostAccess, MAX_VNI, MacvlanMode,
    MacvlanOptions, OverlayOptions, VXLAN_OVERHEAD,
};

/// What a driver knows about one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    /// The 64-hex-character id.
    pub id: String,
    /// The unique name.
    pub name: String,
    /// No way out of the subnet: no default route, no NAT.
    pub internal: bool,
    /// Whether the network has IPv6 subnets.
    pub enable_ipv6: bool,
    /// The driver and its typed options.
    pub options: DriverOptions,
    /// The subnets (IPv4 first, then IPv6) with their gateways, as IPAM reserved them.
    pub subnets: Vec<SubnetInfo>,
}

impl NetworkInfo {
    /// The first IPv4 subnet.
    pub fn ipv4(&self) -> Option<&SubnetInfo> {
        self.subnets.iter().find(|s| s.subnet.is_ipv4())
    }

    /// The first IPv6 subnet.
    pub fn ipv6(&self) -> Option<&SubnetInfo> {
        self.subnets.iter().find(|s| s.subnet.is_ipv6())
    }
}

/// A subnet of a network and its gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetInfo {
    /// The subnet.
    pub subnet: IpNetwork,
    /// The gateway address inside it, if the network has one.
    pub gateway: Option<IpAddr>,
}

impl SubnetInfo {
    /// The gateway as an interface address (`172.18.0.1/16`), if there is one; an error if
    /// the gateway's family differs from the subnet's.
    pub fn gateway_address(&self) -> Result<Option<IpNetwork>, SysError> {
        let Some(gw) = self.gateway else {
            return Ok(None);
        };
        IpNetwork::new(gw, self.subnet.prefix())
            .map(Some)
            .map_err(|_| SysError::InvalidArgument {
                what: format!("gateway {gw} of {}", self.subnet),
            })
    }
}

/// What a driver knows about one endpoint (the attachment of a sandbox to a network).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointInfo {
    /// The endpoint's 64-hex-character id.
    pub id: String,
    /// The interface name inside the sandbox (`eth0`, `eth1`, ...).
    pub ifname: String,
    /// The interface's MAC address.
    pub mac: MacAddr,
    /// The IPv4 address with the subnet's prefix length.
    pub ipv4: Option<Ipv4Network>,
    /// The IPv6 address with the subnet's prefix length.
    pub ipv6: Option<Ipv6Network>,
    /// Published ports.
    #[serde(default)]
    pub ports: Vec<PortMapping>,
}

/// A transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// A published port: Docker's `-p [host_ip:]host_port[-end]:container_port[-end][/proto]`.
///
/// `count` consecutive ports are published: `host_port + i` reaches `container_port + i`.
///
/// ```
/// use wharf::driver::{PortMapping, Protocol};
/// let p: PortMapping = serde_json::from_str(r#"{"protocol":"tcp","host_port":8080,"container_port":80}"#).unwrap();
/// assert_eq!((p.count, p.host_ip), (1, None));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The first host port.
    pub host_port: u16,
    /// The first container port.
    pub container_port: u16,
    /// How many consecutive ports (1 for one port).
    #[serde(default = "one")]
    pub count: u16,
    /// Publish on this host address only (default: every address of the host).
    #[serde(default)]
    pub host_ip: Option<IpAddr>,
}

fn one() -> u16 {
    1
}

impl PortMapping {
    /// One TCP port.
    pub fn tcp(host_port: u16, container_port: u16) -> Self {
        Self {
            protocol: Protocol::Tcp,
            host_port,
            container_port,
            count: 1,
            host_ip: None,
        }
    }

    /// One UDP port.
    pub fn udp(host_port: u16, container_port: u16) -> Self {
        Self {
            protocol: Protocol::Udp,
            ..Self::tcp(host_port, container_port)
        }
    }
}

/// Docker's MAC address for an endpoint: `02:42` followed by the four bytes of its IPv4 address.
///
/// ```
/// use wharf::driver::mac_for_ipv4;
/// assert_eq!(mac_for_ipv4("172.17.0.2".parse().unwrap()).to_string(), "02:42:ac:11:00:02");
/// ```
pub fn mac_for_ipv4(ip: Ipv4Addr) -> MacAddr {
    let [a, b, c, d] = ip.octets();
    MacAddr([0x02, 0x42, a, b, c, d])
}

/// The sandbox a driver attaches an endpoint to.
#[derive(Debug, Clone)]
pub struct SandboxContext {
    /// The sandbox's name (for error messages).
    pub name: String,
    /// Its network namespace.
    pub ns: NetNs,
    /// A route-netlink handle inside it.
    pub handle: Handle,
    /// Whether the sandbox is the host namespace itself (host networking).
    pub is_host: bool,
}

/// What joining tells the controller, which owns the sandbox-wide settings (default route).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Joined {
    /// The interface index inside the sandbox, if the driver made one.
    pub ifindex: Option<u32>,
    /// The IPv4 gateway the sandbox may route through.
    pub gateway_v4: Option<Ipv4Addr>,
    /// The IPv6 gateway the sandbox may route through.
    pub gateway_v6: Option<Ipv6Addr>,
}

/// One static entry of a cluster network's data plane, for an endpoint on another host.
///
/// An overlay programs, for every remote endpoint, where its MAC lives ([`PeerEntry::Fdb`]) and
/// which MAC its IP has ([`PeerEntry::Neighbour`]), so that nothing is learnt or flooded across
/// the underlay. The order (`Fdb` before `Neighbour`, then by value) is what sets of entries
/// sort by.
///
/// ```
/// use wharf::driver::PeerEntry;
/// let mac = "02:42:0a:00:00:03".parse().unwrap();
/// let fdb = PeerEntry::Fdb { mac, vtep: "198.18.0.2".parse().unwrap() };
/// let arp = PeerEntry::Neighbour { ip: "10.0.0.3".parse().unwrap(), mac };
/// assert!(fdb < arp);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerEntry {
    /// Frames for `mac` go through the tunnel to the host whose underlay address is `vtep`.
    Fdb {
        /// The remote endpoint's MAC address.
        mac: MacAddr,
        /// The underlay address of the host it is on (its VXLAN tunnel end point).
        vtep: IpAddr,
    },
    /// `ip` is at `mac`: address resolution for it is answered on this host.
    Neighbour {
        /// The remote endpoint's address.
        ip: IpAddr,
        /// Its MAC address.
        mac: MacAddr,
    },
}

/// Why a driver refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// The options do not fit this driver or each other.
    #[error("network {network:?}: invalid {driver} option: {reason}")]
    InvalidOption {
        /// The network's name.
        network: String,
        /// The driver.
        driver: DriverKind,
        /// What is wrong.
        reason: String,
    },
    /// The request is not something this driver does.
    #[error("network {network:?} ({driver}): {reason}")]
    Unsupported {
        /// The network's name.
        network: String,
        /// The driver.
        driver: DriverKind,
        /// What is not supported.
        reason: String,
    },
    /// The parent interface a network names cannot carry it (missing, loopback, a bridge
    /// port...). Nothing was created.
    #[error("network {network:?}: parent {parent:?}: {reason}")]
    InvalidParent {
        /// The network's name.
        network: String,
        /// The parent interface.
        parent: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The parent interface is taken whole by a passthru network or endpoint.
    #[error("network {network:?}: parent {parent:?} is taken: {reason}")]
    ParentInUse {
        /// The network's name.
        network: String,
        /// The parent interface.
        parent: String,
        /// What holds it.
        reason: String,
    },
    /// A kernel operation failed.
    #[error("network {network:?}: {source}")]
    Kernel {
        /// The network's name.
        network: String,
        /// The kernel error, naming the operation and the object.
        source: SysError,
    },
}

impl DriverError {
    /// Wraps a kernel error for `network`.
    pub fn kernel(network: &str) -> impl FnOnce(SysError) -> Self + '_ {
        move |source| Self::Kernel {
            network: network.to_owned(),
            source,
        }
    }
}

/// A network driver.
///
/// The controller calls, for a network: [`Driver::validate`] and [`Driver::prepare_network`]
/// before anything is created, then [`Driver::create_network`]; for each endpoint:
/// [`Driver::join`] (and [`Driver::program_external_connectivity`]) on connect,
/// [`Driver::revoke_external_connectivity`] and [`Driver::leave_sandbox`] (by default
/// [`Driver::leave`]) on disconnect; [`Driver::delete_network`] last; and after a restart
/// [`Driver::restore_network`] for each stored network. Every method that
/// changes the kernel either completes or undoes its own partial work before returning an error.
/// `leave` and `delete_network` succeed when the objects are already gone.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait Driver: Send + Sync + std::fmt::Debug {
    /// Which driver this is.
    fn kind(&self) -> DriverKind;

    /// Checks a network's options before anything is created.
    fn validate(&self, net: &NetworkInfo) -> Result<(), DriverError>;

    /// Checks that need the kernel (e.g. that a parent interface exists), called after
    /// [`Driver::validate`] and before addresses are reserved. Reads the kernel but changes
    /// nothing in it; may record in `net.options` facts found now that must survive restarts
    /// (the controller stores the options as they are after this call). Accepts by default.
    async fn prepare_network(&self, _net: &mut NetworkInfo) -> Result<(), DriverError> {
        Ok(())
    }

    /// After the controller restarts: tells the driver about a stored network of its kind and
    /// the endpoints on it, for drivers that need to know their networks (e.g. which parent
    /// interfaces they share). Nothing in the kernel changes. Does nothing by default.
    fn restore_network(&self, _net: &NetworkInfo, _endpoints: &[EndpointInfo]) {}

    /// Creates the network's kernel objects (a bridge, ...).
    async fn create_network(&self, net: &NetworkInfo) -> Result<(), DriverError>;

    /// Deletes the network's kernel objects; succeeds if they are already gone.
    async fn delete_network(&self, net: &NetworkInfo) -> Result<(), DriverError>;

    /// Checks an endpoint before anything is created for it (e.g. options the driver cannot
    /// honour). Nothing in the kernel changes. Accepts everything by default.
    fn validate_endpoint(&self, _net: &NetworkInfo, _ep: &EndpointInfo) -> Result<(), DriverError> {
        Ok(())
    }

    /// Attaches an endpoint to a sandbox: its interface inside the sandbox, with addresses and
    /// up. Default routes are the controller's business (it knows the sandbox's other networks).
    async fn join(
        &self,
        net: &NetworkInfo,
        ep: &EndpointInfo,
        sandbox: &SandboxContext,
    ) -> Result<Joined, DriverError>;

    /// Detaches an endpoint; succeeds if its interface (or the whole sandbox) is already gone.
    async fn leave(&self, net: &NetworkInfo, ep: &EndpointInfo) -> Result<(), DriverError>;

    /// Detaches an endpoint, given its sandbox while the sandbox's namespace still exists
    /// (`None` once it is gone). The controller calls this rather than [`Driver::leave`], for
    /// drivers whose interface lives only inside the sandbox (macvlan). By default it is
    /// [`Driver::leave`].
    async fn leave_sandbox<'a>(
        &self,
        net: &NetworkInfo,
        ep: &EndpointInfo,
        _sandbox: Option<&'a SandboxContext>,
    ) -> Result<(), DriverError> {
        self.leave(net, ep).await
    }

    /// Removes the interfaces of several endpoints at once, ahead of their
    /// [`Driver::leave_sandbox`] calls (which then find them gone and succeed), for drivers that
    /// can do it in fewer kernel requests than one per endpoint: the kernel's teardown of a
    /// deleted interface (RCU grace periods) is then paid once for the lot. All or nothing: on
    /// an error no interface was removed and each endpoint's own leave does the work. The
    /// controller passes only endpoints whose leave needs nothing else first (no published
    /// ports). By default nothing is done here.
    async fn remove_interfaces<'a>(
        &self,
        _endpoints: &[(&'a NetworkInfo, &'a EndpointInfo)],
    ) -> Result<(), DriverError> {
        Ok(())
    }

    /// Opens the endpoint to the outside (NAT, published ports). No-op by default.
    async fn program_external_connectivity(
        &self,
        _net: &NetworkInfo,
        _ep: &EndpointInfo,
    ) -> Result<(), DriverError> {
        Ok(())
    }

    /// Undoes [`Driver::program_external_connectivity`]. No-op by default.
    async fn revoke_external_connectivity(
        &self,
        _net: &NetworkInfo,
        _ep: &EndpointInfo,
    ) -> Result<(), DriverError> {
        Ok(())
    }

    /// Programs static entries for endpoints on other hosts of a cluster network. Adding an
    /// entry that is there already changes nothing; an entry for a MAC or IP that has another
    /// destination is replaced. A network with no data plane on this host (no local endpoint)
    /// has nothing to program: that is not an error. The caller serialises the peer operations
    /// and the joins and leaves of one network. No-op by default (local drivers).
    async fn peer_add(
        &self,
        _net: &NetworkInfo,
        _entries: &[PeerEntry],
    ) -> Result<(), DriverError> {
        Ok(())
    }

    /// Removes static entries programmed by [`Driver::peer_add`]; entries already gone are
    /// skipped. No-op by default.
    async fn peer_remove(
        &self,
        _net: &NetworkInfo,
        _entries: &[PeerEntry],
    ) -> Result<(), DriverError> {
        Ok(())
    }

    /// The peer entries the kernel holds for a cluster network on this host, or `None` if the
    /// network has no data plane here. `None` by default.
    async fn peer_entries(
        &self,
        _net: &NetworkInfo,
    ) -> Result<Option<Vec<PeerEntry>>, DriverError> {
        Ok(None)
    }

    /// Recovery after a crash: whether every kernel object of the endpoint exists as `ep` says,
    /// i.e. whether [`Driver::join`] finished. Reads the kernel only. By default: the sandbox's
    /// side ([`sandbox_side_present`]); drivers with a host side check that too.
    async fn endpoint_present(
        &self,
        net: &NetworkInfo,
        ep: &EndpointInfo,
        sandbox: &SandboxContext,
    ) -> Result<bool, DriverError> {
        sandbox_side_present(ep, sandbox)
            .await
            .map_err(DriverError::kernel(&net.name))
    }

    /// Recovery after a crash: whether [`Driver::create_network`] finished. Reads the kernel
    /// only. True by default (drivers that make nothing per network, or make it lazily).
    async fn network_present(&self, _net: &NetworkInfo) -> Result<bool, DriverError> {
        Ok(true)
    }

    /// Makes the kernel match this driver's stored networks and their endpoints again:
    /// recreates per-network objects that were removed from outside (a deleted bridge, a
    /// flushed firewall) and re-attaches the endpoints' existing host sides to them. With
    /// `prune`, also removes what the driver made for objects no network or endpoint has any
    /// more (elements in wharf's own nftables tables); the caller guarantees that no join or
    /// leave runs at the same time then. Endpoints whose interfaces are gone are not the
    /// driver's business here: the controller joins them again. No-op by default.
    async fn reconcile(&self, _networks: &[NetworkState], _prune: bool) -> Result<(), DriverError> {
        Ok(())
    }
}

/// A stored network and its endpoints, as [`Driver::reconcile`] receives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkState {
    /// The network.
    pub info: NetworkInfo,
    /// Its endpoints on this host.
    pub endpoints: Vec<EndpointInfo>,
}

/// Whether the sandbox holds the endpoint's interface as [`Driver::join`] leaves it: named
/// `ep.ifname`, with `ep.mac`, its addresses, and up. A sandbox on the host's namespace has no
/// interface of its own: always true.
pub async fn sandbox_side_present(
    ep: &EndpointInfo,
    sandbox: &SandboxContext,
) -> Result<bool, SysError> {
    if sandbox.is_host {
        return Ok(true);
    }
    let link = match sandbox.handle.link().get(&ep.ifname).await {
        Ok(l) => l,
        Err(e) if e.is_not_found() => return Ok(false),
        Err(e) => return Err(e),
    };
    if link.mac != Some(ep.mac) || !link.up {
        return Ok(false);
    }
    let have: Vec<IpNetwork> = sandbox
        .handle
        .address()
        .list_on(link.index)
        .await?
        .into_iter()
        .map(|a| a.addr)
        .collect();
    let wanted = ep
        .ipv4
        .map(IpNetwork::V4)
        .into_iter()
        .chain(ep.ipv6.map(IpNetwork::V6));
    Ok(wanted.into_iter().all(|w| have.contains(&w)))
}

/// Configures a sandbox's new interface `ep.ifname` (the container end of a veth, created down)
/// from inside the sandbox: its endpoint's addresses, then up; returns its index.
///
/// An interface that gets no IPv6 address gets none from the kernel either. Such an interface
/// says nothing until its container does, so nothing may rely on it announcing itself: the
/// overlay's join makes `br0` forget where it learnt the container's MAC (see `driver/overlay`;
/// a MAC can come back from another host, where `br0` learnt it behind `vxlan0`).
///
/// Quieting: no link-local address (`addrgenmode none`, set before it comes up), so coming up
/// it sends no duplicate address detection, router solicitation or MLD report. A bridge (a
/// bridge network's, an overlay's `br0`) floods those multicasts to every port, where each is
/// received by another sandbox's stack, which made an attach cost grow with the number of ports (8x between the
/// 10th and the 1000th port; docs/BENCHMARKS.md). Docker turns IPv6 off on such an interface
/// with the `disable_ipv6` sysctl; that takes a thread in the sandbox's namespace and spins on
/// `rtnl_trylock` while other attaches hold the lock, so wharf says it over netlink instead. A
/// kernel without IPv6 has nothing to quiet (`EAFNOSUPPORT`).
pub(crate) async fn configure_sandbox_interface(
    inside: &Handle,
    ep: &EndpointInfo,
) -> Result<u32, SysError> {
    let link = inside.link().get(&ep.ifname).await?;
    if ep.ipv6.is_none() {
        let quiet = inside
            .link()
            .set(
                link.index,
                crate::sys::rtnl::LinkChange::new().no_ipv6_addr_gen(),
            )
            .await;
        match quiet {
            Err(e) if e.kind() == crate::sys::SysErrorKind::NotSupported => {}
            other => other?,
        }
    }
    if let Some(v4) = ep.ipv4 {
        inside.address().add(link.index, IpNetwork::V4(v4)).await?;
    }
    if let Some(v6) = ep.ipv6 {
        inside.address().add(link.index, IpNetwork::V6(v6)).await?;
    }
    inside.link().set_up(link.index).await?;
    Ok(link.index)
}
